with

source as (

    select * from {{ source('shop', 'orders') }}
    {{ dev_orders_window('order_id') }}

),

renamed as (

    select

        ---------- ids
        cast(order_id as bigint) as order_id,
        cast(customer_id as bigint) as customer_id,
        cast(store_id as bigint) as store_id,

        ---------- text
        status,

        ---------- numerics
        {{ cents_to_dollars('subtotal_cents') }} as subtotal,
        {{ cents_to_dollars('tax_cents') }} as tax_paid,
        {{ cents_to_dollars('total_cents') }} as order_total,

        ---------- booleans
        status = 'cancelled' as is_cancelled,

        ---------- timestamps
        cast(ordered_at as timestamp) as ordered_at,
        cast(updated_at as timestamp) as updated_at

    from source

)

select * from renamed
