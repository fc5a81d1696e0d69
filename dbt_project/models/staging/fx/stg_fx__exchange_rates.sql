with

source as (

    select * from {{ source('fx', 'exchange_rates') }}

),

renamed as (

    select

        ---------- text
        base as base_currency,
        quote as quote_currency,

        ---------- numerics
        rate as units_per_usd,

        ---------- dates
        date as rate_date

    from source

)

select * from renamed
