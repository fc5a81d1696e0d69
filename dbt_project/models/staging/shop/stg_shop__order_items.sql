with

source as (

    select * from {{ source('shop', 'order_items') }}
    {{ dev_orders_window('order_id') }}

),

renamed as (

    select

        ---------- ids
        cast(order_item_id as bigint) as order_item_id,
        cast(order_id as bigint) as order_id,
        cast(product_id as bigint) as product_id,

        ---------- numerics
        cast(quantity as bigint) as quantity,
        {{ cents_to_dollars('unit_price_cents') }} as unit_price,

        ---------- timestamps
        cast(updated_at as timestamp) as updated_at

    from source

)

select * from renamed
