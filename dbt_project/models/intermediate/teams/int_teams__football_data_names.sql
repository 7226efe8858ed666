with

matches as (

    select * from {{ ref('stg_football_data__matches') }}

),

mapping as (

    select * from {{ ref('team_name_mapping') }}

),

api_teams as (

    select * from {{ ref('stg_football_api__teams') }}

),

football_data_names as (

    select home_team_name as football_data_team_name from matches
    union
    select away_team_name from matches

),

resolved as (

    select
        team_names.football_data_team_name,
        mapping.api_team_name,
        api_teams.team_id as api_team_id
    from football_data_names as team_names
    left join mapping
        on team_names.football_data_team_name = mapping.football_data_team_name
    left join api_teams
        on mapping.api_team_name = api_teams.team_name

),

final as (

    select
        football_data_team_name,
        api_team_name,
        api_team_id,
        {{ team_key('api_team_id', 'football_data_team_name') }} as team_key
    from resolved

)

select * from final
