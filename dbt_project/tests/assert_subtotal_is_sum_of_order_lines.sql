-- Every order's subtotal equals the sum of its lines (quantity × unit price).
with

orders as (

    select * from {{ ref('fct_orders') }}

),

order_items as (

    select * from {{ ref('stg_shop__order_items') }}

),

lines_per_order as (

    select
        order_id,
        sum(quantity * unit_price) as lines_total

    from order_items

    group by 1

),

final as (

    select
        orders.order_id,
        orders.subtotal,
        lines_per_order.lines_total

    from orders

    left join lines_per_order
        on orders.order_id = lines_per_order.order_id

    where orders.subtotal != coalesce(lines_per_order.lines_total, 0)

)

select * from final
