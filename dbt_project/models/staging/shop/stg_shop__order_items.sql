with

source as (

    select * from {{ source('shop', 'order_items') }}

),

renamed as (

    select
        order_item_id,
        order_id,
        product_id,
        quantity,
        {{ cents_to_dollars('unit_price_cents') }} as unit_price,
        cast(updated_at as timestamp) as updated_at

    from source

)

select * from renamed
