with

customers as (

    select * from {{ ref('stg_shop__customers') }}

),

orders as (

    select * from {{ ref('stg_shop__orders') }}

),

orders_per_customer as (

    select
        customer_id,
        min(ordered_at) as first_ordered_at,
        max(ordered_at) as last_ordered_at,
        count(*) as order_count,
        sum(
            case when not is_cancelled then order_total else 0 end
        ) as lifetime_value

    from orders

    group by 1

),

final as (

    select
        customers.customer_id,
        customers.customer_name,
        orders_per_customer.first_ordered_at,
        orders_per_customer.last_ordered_at,
        coalesce(orders_per_customer.order_count, 0) as order_count,
        coalesce(
            cast(orders_per_customer.lifetime_value as decimal(18, 2)), 0
        ) as lifetime_value

    from customers

    left join orders_per_customer
        on customers.customer_id = orders_per_customer.customer_id

)

select * from final
