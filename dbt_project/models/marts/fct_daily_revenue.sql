with

orders as (

    select * from {{ ref('stg_shop__orders') }}

),

final as (

    select
        cast(ordered_at as date) as order_date,
        store_id,
        {# every order counts, cancelled ones too; revenue leaves them out #}
        count(*) as order_count,
        cast(
            sum(case when not is_cancelled then order_total else 0 end)
            as decimal(18, 2)
        ) as revenue

    from orders

    group by 1, 2

)

select * from final
