with

source as (

    select * from {{ source('payments', 'payments') }}

),

renamed as (

    select
        payment_id,
        order_id,
        method as payment_method,
        currency,
        status,
        {{ cents_to_dollars('amount') }} as amount,
        {{ cents_to_dollars('amount_refunded') }} as amount_refunded,
        status = 'succeeded' as is_succeeded,
        timezone('UTC', created_at) as created_at,
        timezone('UTC', updated_at) as updated_at

    from source

)

select * from renamed
