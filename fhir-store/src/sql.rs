//! The SQL of a search: a parsed [`SearchQuery`] as a COUNT query and a page query over the
//! `current`, `history`, `tokens` and `refs` tables, with their arguments.

use rusqlite::types::Value as Sql;

use crate::search::{DateField, DatePrefix, Filter, SearchQuery, SortField, TokenSystem};

/// The SQL of a search: the count, the page (its last two arguments are LIMIT and OFFSET, not
/// included), and the arguments of the conditions.
pub(crate) fn search_sql(resource_type: &str, query: &SearchQuery) -> (String, String, Vec<Sql>) {
    // With a token or reference condition (`c.seq IN (...)`, resources found by their side
    // rows' keys), `c.type` must not be used for an index: SQLite otherwise may walk every
    // resource of the type by `current_updated` and test each against the list (10,000
    // Observations read for one identifier) instead of looking the listed rows up by rowid.
    // The unary `+` keeps the condition and takes it out of index selection.
    let by_rows = query
        .filters
        .iter()
        .any(|f| matches!(f, Filter::Token { .. } | Filter::Reference { .. }));
    let type_term = if by_rows { "+c.type = ?" } else { "c.type = ?" };
    let mut conditions = vec![type_term.to_string()];
    let mut args: Vec<Sql> = vec![Sql::Text(resource_type.to_string())];
    for f in &query.filters {
        conditions.push(filter_sql(resource_type, f, &mut args));
    }
    let where_sql = conditions.join(" AND ");
    let mut order: Vec<String> = Vec::new();
    for k in &query.sort {
        let dir = if k.descending { "DESC" } else { "ASC" };
        match k.field {
            SortField::Date => {
                order.push("c.date_start IS NULL".into());
                order.push(format!("c.date_start {dir}"));
            }
            SortField::LastUpdated => order.push(format!("c.last_updated_ms {dir}")),
            SortField::Id => order.push(format!("c.id {dir}")),
        }
    }
    order.push("c.seq ASC".into());
    let count_sql = format!("SELECT COUNT(*) FROM current c WHERE {where_sql}");
    let page_sql = format!(
        "SELECT c.id, h.json FROM current c JOIN history h
           ON h.seq = c.seq AND h.version = c.version
         WHERE {where_sql} ORDER BY {} LIMIT ? OFFSET ?",
        order.join(", ")
    );
    (count_sql, page_sql, args)
}

/// The SQL condition for one filter (on `current c`), pushing its arguments.
fn filter_sql(resource_type: &str, filter: &Filter, args: &mut Vec<Sql>) -> String {
    let text = |s: &str| Sql::Text(s.to_string());
    match filter {
        Filter::Id(ids) => {
            let marks = vec!["?"; ids.len()].join(", ");
            args.extend(ids.iter().map(|i| text(i)));
            format!("c.id IN ({marks})")
        }
        Filter::Token { param, any_of } => {
            let mut alts = Vec::new();
            for t in any_of {
                let mut conds = vec!["t.type = ?", "t.param = ?"];
                args.push(text(resource_type));
                args.push(text(param));
                if let Some(v) = &t.value {
                    conds.push("t.value = ?");
                    args.push(text(v));
                }
                match &t.system {
                    TokenSystem::Any => {}
                    TokenSystem::Absent => {
                        conds.push("t.system = ''");
                    }
                    TokenSystem::Is(s) => {
                        conds.push("t.system = ?");
                        args.push(text(s));
                    }
                }
                alts.push(format!(
                    "SELECT t.seq FROM tokens t WHERE {}",
                    conds.join(" AND ")
                ));
            }
            format!("c.seq IN ({})", alts.join(" UNION "))
        }
        Filter::Reference { param, any_of } => {
            let mut alts = Vec::new();
            for r in any_of {
                let mut conds = vec!["r.type = ?", "r.param = ?", "r.target_id = ?"];
                args.push(text(resource_type));
                args.push(text(param));
                args.push(text(&r.id));
                if let Some(t) = &r.resource_type {
                    conds.push("r.target_type = ?");
                    args.push(text(t));
                }
                alts.push(format!(
                    "SELECT r.seq FROM refs r WHERE {}",
                    conds.join(" AND ")
                ));
            }
            format!("c.seq IN ({})", alts.join(" UNION "))
        }
        Filter::Date { field, any_of } => {
            let (s, e) = match field {
                DateField::Clinical => ("c.date_start", "c.date_end"),
                DateField::LastUpdated => ("c.last_updated_ms", "c.last_updated_ms"),
            };
            let mut alts = Vec::new();
            for b in any_of {
                let cond = match b.prefix {
                    DatePrefix::Eq => {
                        args.push(Sql::Integer(b.start));
                        args.push(Sql::Integer(b.end));
                        format!("({s} >= ? AND {e} <= ?)")
                    }
                    DatePrefix::Ne => {
                        args.push(Sql::Integer(b.start));
                        args.push(Sql::Integer(b.end));
                        format!("({s} IS NOT NULL AND NOT ({s} >= ? AND {e} <= ?))")
                    }
                    DatePrefix::Gt => {
                        args.push(Sql::Integer(b.end));
                        format!("{e} > ?")
                    }
                    DatePrefix::Lt => {
                        args.push(Sql::Integer(b.start));
                        format!("{s} < ?")
                    }
                    DatePrefix::Ge => {
                        args.push(Sql::Integer(b.start));
                        format!("{e} >= ?")
                    }
                    DatePrefix::Le => {
                        args.push(Sql::Integer(b.end));
                        format!("{s} <= ?")
                    }
                    DatePrefix::Sa => {
                        args.push(Sql::Integer(b.end));
                        format!("{s} > ?")
                    }
                    DatePrefix::Eb => {
                        args.push(Sql::Integer(b.start));
                        format!("{e} < ?")
                    }
                };
                alts.push(cond);
            }
            format!("({})", alts.join(" OR "))
        }
    }
}
