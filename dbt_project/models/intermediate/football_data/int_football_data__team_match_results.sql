with

matches as (

    select * from {{ ref('stg_football_data__matches') }}
    where home_goals is not null and away_goals is not null

),

home_side as (

    select
        division_code,
        season_code,
        match_date,
        home_team_name as team_name,
        away_team_name as opponent_name,
        true as is_home,
        home_goals as goals_for,
        away_goals as goals_against
    from matches

),

away_side as (

    select
        division_code,
        season_code,
        match_date,
        away_team_name as team_name,
        home_team_name as opponent_name,
        false as is_home,
        away_goals as goals_for,
        home_goals as goals_against
    from matches

),

both_sides as (

    select * from home_side
    union all
    select * from away_side

),

final as (

    select
        *,
        case
            when goals_for > goals_against then 'won'
            when goals_for = goals_against then 'drawn'
            else 'lost'
        end as outcome,
        case
            when goals_for > goals_against then 3
            when goals_for = goals_against then 1
            else 0
        end as points
    from both_sides

)

select * from final
