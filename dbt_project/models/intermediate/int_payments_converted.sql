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

{# The latest rate on or before the day the payment was made (UTC): rate
   feeds skip weekends and holidays and publish late, so that day may have
   none. ASOF picks, per currency, the greatest rate_date <= paid_date; a
   payment older than every rate of its currency gets none (null, an error
   for the not_null test). USD has no row: rate 1. #}
payments_joined_to_rates as (

    select
        payments_valued.*,
        exchange_rates.rate_date,
        case
            when payments_valued.currency = 'USD' then 1.0
            else exchange_rates.units_per_usd
        end as units_per_usd

    from payments_valued

    asof left join exchange_rates
        on
            payments_valued.currency = exchange_rates.quote_currency
            and payments_valued.paid_date >= exchange_rates.rate_date

),

final as (

    select
        *,
        paid_date - rate_date as rate_age_days,
        net_amount / units_per_usd as net_amount_usd

    from payments_joined_to_rates

)

select * from final
