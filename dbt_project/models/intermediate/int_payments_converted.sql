-- What each payment attempt is worth in USD now: a succeeded payment counts its amount less
-- what was refunded, any other attempt only minus refunds (none in practice); converted at
-- the rate of the day the payment was made (UTC).
with

payments as (

    select * from {{ ref('stg_payments__payments') }}

),

exchange_rates as (

    select * from {{ ref('stg_fx__exchange_rates') }}

),

payments_joined_to_rates as (

    select
        payments.payment_id,
        payments.order_id,
        payments.currency,
        payments.status,
        cast(payments.created_at as date) as paid_date,
        case
            when payments.is_succeeded then payments.amount - payments.amount_refunded
            else -payments.amount_refunded
        end as net_amount,
        case
            when payments.currency = 'USD' then 1.0
            else exchange_rates.units_per_usd
        end as units_per_usd

    from payments
    left join exchange_rates
        on
            cast(payments.created_at as date) = exchange_rates.rate_date
            and payments.currency = exchange_rates.quote_currency

),

final as (

    select
        *,
        net_amount / units_per_usd as net_amount_usd

    from payments_joined_to_rates

)

select * from final
