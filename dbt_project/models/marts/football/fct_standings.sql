with

team_results as (

    select * from {{ ref('int_football_data__team_match_results') }}

),

totals as (

    select
        division_code,
        season_code,
        team_name,
        cast(count(*) as integer) as played,
        cast(sum(case when outcome = 'won' then 1 else 0 end) as integer) as won,
        cast(sum(case when outcome = 'drawn' then 1 else 0 end) as integer) as drawn,
        cast(sum(case when outcome = 'lost' then 1 else 0 end) as integer) as lost,
        cast(sum(goals_for) as integer) as goals_for,
        cast(sum(goals_against) as integer) as goals_against,
        cast(sum(goals_for) - sum(goals_against) as integer) as goal_difference,
        cast(sum(points) as integer) as points
    from team_results
    group by division_code, season_code, team_name

),

final as (

    select
        *,
        -- Points, then goal difference, then goals scored; the team name only makes the order
        -- total. Head-to-head rules and points deductions are not in the source data.
        cast(row_number() over (
            partition by division_code, season_code
            order by points desc, goal_difference desc, goals_for desc, team_name asc
        ) as integer) as position
    from totals

)

select * from final
