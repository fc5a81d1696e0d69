{#
    Generic test: no value of `column_name` is above `max_value`; nulls pass (a not_null
    test decides whether they may be null). Fails with the offending rows. A `max_value`
    that is not a number (e.g. a mistyped `--vars`) is a compilation error naming the column.
#}
{% test at_most(model, column_name, max_value) %}

    {% if max_value is not number or max_value is boolean %}
        {{ exceptions.raise_compiler_error(
            "at_most on " ~ column_name ~ ": max_value must be a number, got "
            ~ max_value | string | tojson
        ) }}
    {% endif %}

select *
from {{ model }}
where {{ column_name }} > {{ max_value }}

{% endtest %}
