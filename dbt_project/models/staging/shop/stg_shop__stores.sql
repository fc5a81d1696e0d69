with

source as (

    select * from {{ source('shop', 'stores') }}

),

renamed as (

    select

        ---------- ids
        cast(store_id as bigint) as store_id,

        ---------- text
        name as store_name,
        city,

        ---------- timestamps
        cast(created_at as timestamp) as opened_at,
        cast(updated_at as timestamp) as updated_at

    from source

)

select * from renamed
