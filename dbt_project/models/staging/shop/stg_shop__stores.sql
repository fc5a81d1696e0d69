with

source as (

    select * from {{ source('shop', 'stores') }}

),

renamed as (

    select
        store_id,
        name as store_name,
        city,
        cast(created_at as timestamp) as opened_at,
        cast(updated_at as timestamp) as updated_at

    from source

)

select * from renamed
