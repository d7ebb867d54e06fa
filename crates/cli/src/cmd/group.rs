//! `telepound group …`.

use super::{login, parse_group, parse_user};
use crate::args::{ClientArgs, GroupCommand};
use crate::output;
use telepound_protocol::message::{GroupInfo, Role};

fn role(r: Role) -> &'static str {
    match r {
        Role::Owner => "owner",
        Role::Admin => "admin",
        Role::Member => "member",
    }
}

fn print_info(info: &GroupInfo) {
    println!("#{}: {} members", info.group, info.members.len());
    for m in &info.members {
        println!(
            "  {:<32} {:<6} since {}",
            m.user.as_str(),
            role(m.role),
            output::stamp(m.joined_at)
        );
    }
}

pub async fn run(c: &ClientArgs, cmd: GroupCommand) -> anyhow::Result<()> {
    let users = |v: &[String]| {
        v.iter()
            .map(|u| parse_user(u))
            .collect::<anyhow::Result<Vec<_>>>()
    };
    let (mut session, _events) = login(c).await?;
    match cmd {
        GroupCommand::Create { name, users: u } => {
            let g = parse_group(&name)?;
            let info = session.group_create(&g, users(&u)?).await?;
            println!("Created #{g}.");
            print_info(&info);
        }
        GroupCommand::Add { name, users: u } => {
            let g = parse_group(&name)?;
            print_info(&session.group_add(&g, users(&u)?).await?);
        }
        GroupCommand::Remove { name, users: u } => {
            let g = parse_group(&name)?;
            print_info(&session.group_remove(&g, users(&u)?).await?);
        }
        GroupCommand::Leave { name } => {
            let g = parse_group(&name)?;
            session.group_leave(&g).await?;
            println!("You left #{g}.");
        }
        GroupCommand::List => {
            let groups = session.group_list().await?;
            if groups.is_empty() {
                println!("You are in no groups.");
            }
            for s in groups {
                println!(
                    "#{:<32} {:<6} {} members",
                    s.group.as_str(),
                    role(s.role),
                    s.members
                );
            }
        }
        GroupCommand::Info { name } => print_info(&session.group_info(&parse_group(&name)?).await?),
        GroupCommand::Promote { name, member } => {
            let g = parse_group(&name)?;
            print_info(&session.group_promote(&g, &parse_user(&member)?).await?);
        }
    }
    session.client().close().await;
    Ok(())
}
