with

source as (

    select * from {{ source('shop', 'customers') }}

),

renamed as (

    select
        customer_id,
        name as customer_name,
        email,
        cast(created_at as timestamp) as created_at,
        cast(updated_at as timestamp) as updated_at

    from source

)

select * from renamed
