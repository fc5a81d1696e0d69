with

source as (

    select * from {{ source('shop', 'customers') }}

),

renamed as (

    select

        ---------- ids
        cast(customer_id as bigint) as customer_id,

        ---------- text
        name as customer_name,
        email,

        ---------- timestamps
        cast(created_at as timestamp) as created_at,
        cast(updated_at as timestamp) as updated_at

    from source

    -- soft-deleted rows should never reach raw; any that do stop here
    where deleted_at is null

)

select * from renamed
