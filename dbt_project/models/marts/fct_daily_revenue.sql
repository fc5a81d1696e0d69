with

orders as (

    select * from {{ ref('stg_shop__orders') }}

),

final as (

    select
        cast(ordered_at as date) as order_date,
        store_id,
        count(*) as order_count,
        cast(sum(case when not is_cancelled then order_total else 0 end) as decimal(18, 2))
            as revenue

    from orders
    group by cast(ordered_at as date), store_id

)

select * from final
