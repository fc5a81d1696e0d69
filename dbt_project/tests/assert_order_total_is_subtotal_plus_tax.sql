-- Every order's total is its subtotal plus tax, to the cent.
select
    order_id,
    subtotal,
    tax_paid,
    order_total

from {{ ref('fct_orders') }}
where order_total != subtotal + tax_paid
