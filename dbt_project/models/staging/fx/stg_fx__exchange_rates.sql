with

source as (

    select * from {{ source('fx', 'exchange_rates') }}

),

renamed as (

    select
        date as rate_date,
        base as base_currency,
        quote as quote_currency,
        rate as units_per_usd

    from source

)

select * from renamed
