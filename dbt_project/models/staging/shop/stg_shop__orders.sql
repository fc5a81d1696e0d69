with

source as (

    select * from {{ source('shop', 'orders') }}

),

renamed as (

    select

        ---------- ids
        order_id,
        customer_id,
        store_id,

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
