with

matches as (

    select * from {{ ref('stg_football_api__matches') }}

),

final as (

    select
        match_id,
        competition_id,
        season_year as season,
        kickoff_at,
        match_date,
        status,
        matchday,
        stage,
        home_team_id,
        away_team_id,
        home_goals,
        away_goals,
        home_half_time_goals,
        away_half_time_goals,
        winner,
        duration,
        status = 'FINISHED' as is_finished,
        last_updated_at
    from matches

)

select * from final
