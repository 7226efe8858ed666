{%- set raw = existing_columns(source('football_data', 'matches')) -%}

with

source as (

    select * from {{ source_or_empty('football_data', 'matches') }}

),

latest_version as (

    -- The loader merges on the match key; this also holds for a replayed or hand-made table.
    select *
    from {{ deduplicate(
        'source',
        partition_by=['division', 'season', 'match_date', 'home_team', 'away_team'],
        order_by=['_dlt_load_id desc']
    ) }}

),

renamed as (

    select
        division as division_code,
        season as season_code,
        cast(season_start_year as integer) as season_start_year,
        cast(match_date as date) as match_date,
        kickoff_time,
        home_team as home_team_name,
        away_team as away_team_name,

        {{ safe_integer(column_or_null(raw, 'fthg')) }} as home_goals,
        {{ safe_integer(column_or_null(raw, 'ftag')) }} as away_goals,
        upper(trim({{ column_or_null(raw, 'ftr') }})) as result,
        {{ safe_integer(column_or_null(raw, 'hthg')) }} as home_half_time_goals,
        {{ safe_integer(column_or_null(raw, 'htag')) }} as away_half_time_goals,
        upper(trim({{ column_or_null(raw, 'htr') }})) as half_time_result,

        {{ column_or_null(raw, 'referee') }} as referee_name,
        {{ safe_integer(column_or_null(raw, 'attendance')) }} as attendance,
        {{ safe_integer(column_or_null(raw, 'hs')) }} as home_shots,
        {{ safe_integer(column_or_null(raw, 'as')) }} as away_shots,
        {{ safe_integer(column_or_null(raw, 'hst')) }} as home_shots_on_target,
        {{ safe_integer(column_or_null(raw, 'ast')) }} as away_shots_on_target,
        {{ safe_integer(column_or_null(raw, 'hc')) }} as home_corners,
        {{ safe_integer(column_or_null(raw, 'ac')) }} as away_corners,
        {{ safe_integer(column_or_null(raw, 'hf')) }} as home_fouls,
        {{ safe_integer(column_or_null(raw, 'af')) }} as away_fouls,
        {{ safe_integer(column_or_null(raw, 'hy')) }} as home_yellow_cards,
        {{ safe_integer(column_or_null(raw, 'ay')) }} as away_yellow_cards,
        {{ safe_integer(column_or_null(raw, 'hr')) }} as home_red_cards,
        {{ safe_integer(column_or_null(raw, 'ar')) }} as away_red_cards,

        {{ safe_double(column_or_null(raw, 'b365h')) }} as bet365_home_win_odds,
        {{ safe_double(column_or_null(raw, 'b365d')) }} as bet365_draw_odds,
        {{ safe_double(column_or_null(raw, 'b365a')) }} as bet365_away_win_odds,
        -- Market averages: Betbrain's Bb* columns until 2018/19, Avg* from 2019/20.
        {{ safe_double(first_existing_column(raw, ['avg_h', 'bb_av_h'])) }} as average_home_win_odds,
        {{ safe_double(first_existing_column(raw, ['avg_d', 'bb_av_d'])) }} as average_draw_odds,
        {{ safe_double(first_existing_column(raw, ['avg_a', 'bb_av_a'])) }} as average_away_win_odds,

        source_file_sha256,
        source_line,
        _dlt_load_id as load_id

    from latest_version

)

select * from renamed
