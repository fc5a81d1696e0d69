with

source as (

    select * from {{ source('shop', 'products') }}

),

renamed as (

    select

        ---------- ids
        cast(product_id as bigint) as product_id,

        ---------- text
        sku,
        name as product_name,
        category,

        ---------- numerics
        {{ cents_to_dollars('price_cents') }} as price,

        ---------- timestamps
        cast(created_at as timestamp) as created_at,
        cast(updated_at as timestamp) as updated_at

    from source

    -- soft-deleted rows should never reach raw; any that do stop here
    where deleted_at is null

)

select * from renamed
