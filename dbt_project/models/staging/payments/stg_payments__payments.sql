with

source as (

    select * from {{ source('payments', 'payments') }}
    {{ dev_orders_window('cast(order_id as bigint)') }}

),

renamed as (

    select

        ---------- ids
        payment_id,
        cast(order_id as bigint) as order_id,

        ---------- text
        method as payment_method,
        currency,
        status,

        ---------- numerics
        -- in units of `currency`: USD, EUR and GBP all have 100 minor units
        {{ cents_to_dollars('amount') }} as amount,
        {{ cents_to_dollars('amount_refunded') }} as amount_refunded,

        ---------- booleans
        status = 'succeeded' as is_succeeded,

        ---------- timestamps
        cast(created_at as timestamp) as created_at,
        cast(updated_at as timestamp) as updated_at

    from source

)

select * from renamed
