{#
    The dev-data limit: with the var `dev_days` (set by `tributary dev init --days N`, never by
    production's runs), only the orders placed in the last N days of the data — counted back
    from the newest order, so a quiet source still yields rows — and the rows that belong to
    them. Without it, nothing: every row. Facts follow orders so that their tests (items and
    payments point at an order) hold in dev too.
#}
{% macro dev_orders_window(order_id_column) -%}
    {%- if var('dev_days', none) is not none -%}
        where {{ order_id_column }} in (
            select order_id from {{ source('shop', 'orders') }}
            where ordered_at >= (
                select max(ordered_at) from {{ source('shop', 'orders') }}
            ) - to_days({{ var('dev_days') | int }})
        )
    {%- endif -%}
{%- endmacro %}
