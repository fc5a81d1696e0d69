with

orders as (

    select * from {{ ref('stg_shop__orders') }}

),

order_items as (

    select * from {{ ref('stg_shop__order_items') }}

),

payments_converted as (

    select * from {{ ref('int_payments_converted') }}

),

items_per_order as (

    select
        order_id,
        sum(quantity) as item_count

    from order_items

    group by 1

),

{# Summed in USD first, then rounded to the cent once: the cast rounds half
   away from zero, on DuckDB and PostgreSQL alike. #}
payments_per_order as (

    select
        order_id,
        cast(sum(net_amount_usd) as decimal(18, 2)) as amount_paid_usd

    from payments_converted

    group by 1

),

orders_joined_to_items_and_payments as (

    select
        orders.order_id,
        orders.customer_id,
        orders.store_id,
        orders.ordered_at,
        orders.status,
        orders.subtotal,
        orders.tax_paid,
        orders.order_total,
        cast(coalesce(items_per_order.item_count, 0) as bigint) as item_count,
        coalesce(payments_per_order.amount_paid_usd, 0) as amount_paid_usd

    from orders

    left join items_per_order
        on orders.order_id = items_per_order.order_id

    left join payments_per_order
        on orders.order_id = payments_per_order.order_id

),

final as (

    select
        *,
        {# a cent of slack: EUR and GBP convert back to USD within a cent #}
        amount_paid_usd >= order_total - 0.01 as is_fully_paid

    from orders_joined_to_items_and_payments

)

select * from final
