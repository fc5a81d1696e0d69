-- fct_daily_revenue agrees with fct_orders on each store's orders and revenue.
with

daily_revenue as (

    select * from {{ ref('fct_daily_revenue') }}

),

orders as (

    select * from {{ ref('fct_orders') }}

),

daily_revenue_per_store as (

    select
        store_id,
        sum(order_count) as order_count,
        sum(revenue) as revenue

    from daily_revenue

    group by 1

),

orders_per_store as (

    select
        store_id,
        count(*) as order_count,
        sum(
            case when status != 'cancelled' then order_total else 0 end
        ) as revenue

    from orders

    group by 1

),

final as (

    select
        orders_per_store.store_id,
        orders_per_store.order_count,
        orders_per_store.revenue,
        daily_revenue_per_store.order_count as daily_order_count,
        daily_revenue_per_store.revenue as daily_revenue

    from orders_per_store

    full outer join daily_revenue_per_store
        on orders_per_store.store_id = daily_revenue_per_store.store_id

    where
        orders_per_store.order_count
        is distinct from daily_revenue_per_store.order_count
        or orders_per_store.revenue
        is distinct from daily_revenue_per_store.revenue

)

select * from final
