with

source as (

    select * from {{ source('shop', 'customers') }}

),

renamed as (

    select

        ---------- ids
        customer_id,

        ---------- text
        name as customer_name,
        email,

        ---------- timestamps
        cast(created_at as timestamp) as created_at,
        cast(updated_at as timestamp) as updated_at

    from source

)

select * from renamed
