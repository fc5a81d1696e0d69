with

payments as (

    select * from {{ ref('stg_payments__payments') }}

),

exchange_rates as (

    select * from {{ ref('stg_fx__exchange_rates') }}

),

{# What each attempt is worth in its own currency: a succeeded payment its
   amount, any other attempt nothing; a refund always subtracts. #}
payments_valued as (

    select
        payment_id,
        order_id,
        currency,
        status,
        created_at,
        cast(created_at as date) as paid_date,
        case
            when is_succeeded then amount - amount_refunded
            else -amount_refunded
        end as net_amount

    from payments

),

{# The rate of the day the payment was made (UTC); USD has no row: rate 1. #}
payments_joined_to_rates as (

    select
        payments_valued.*,
        case
            when payments_valued.currency = 'USD' then 1.0
            else exchange_rates.units_per_usd
        end as units_per_usd

    from payments_valued

    left join exchange_rates
        on
            payments_valued.paid_date = exchange_rates.rate_date
            and payments_valued.currency = exchange_rates.quote_currency

),

final as (

    select
        *,
        net_amount / units_per_usd as net_amount_usd

    from payments_joined_to_rates

)

select * from final
