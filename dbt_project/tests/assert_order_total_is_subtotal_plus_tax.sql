-- Every order's total is its subtotal plus tax, to the cent.
with

orders as (

    select * from {{ ref('fct_orders') }}

),

final as (

    select
        order_id,
        subtotal,
        tax_paid,
        order_total

    from orders

    where order_total != subtotal + tax_paid

)

select * from final
