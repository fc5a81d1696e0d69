with

source as (

    select * from {{ source('shop', 'order_items') }}

),

renamed as (

    select

        ---------- ids
        order_item_id,
        order_id,
        product_id,

        ---------- numerics
        quantity,
        {{ cents_to_dollars('unit_price_cents') }} as unit_price,

        ---------- timestamps
        cast(updated_at as timestamp) as updated_at

    from source

)

select * from renamed
