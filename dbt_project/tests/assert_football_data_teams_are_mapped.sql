{{ config(severity='warn') }}
-- Coverage of the team_name_mapping seed: football-data.co.uk team names, in divisions whose
-- league is loaded from football-data.org, that resolve to no API team. Each row is a name to
-- add to seeds/team_name_mapping.csv (or a team the API does not list for the loaded seasons).
with

covered_divisions as (

    select distinct competitions.division_code
    from {{ ref('dim_competitions') }} as competitions
    inner join {{ ref('fct_competition_teams') }} as competition_teams
        on competitions.competition_id = competition_teams.competition_id
    where competitions.division_code is not null

),

names_in_covered_divisions as (

    select
        division_code,
        home_team_name as team_name
    from {{ ref('fct_matches') }}
    union
    select
        division_code,
        away_team_name
    from {{ ref('fct_matches') }}

)

select
    team_names.division_code,
    team_names.team_name as unmapped_team_name
from names_in_covered_divisions as team_names
inner join covered_divisions
    on team_names.division_code = covered_divisions.division_code
inner join {{ ref('int_teams__football_data_names') }} as resolved
    on team_names.team_name = resolved.football_data_team_name
where resolved.api_team_id is null
