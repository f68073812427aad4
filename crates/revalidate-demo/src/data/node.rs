//! `node.tree`: the navigation, the same for every seed and forever.

use serde_json::{Value, json};

use super::Params;
use crate::error::ApiError;

/// `node.tree`: the navigation; `root` selects a subtree.
pub(crate) fn tree(params: &Params) -> Result<Value, ApiError> {
    // Navigation is the app's skeleton: the same for every seed and forever.
    let tree = json!([
        {"id": "home", "label": "Home", "path": "/", "action": null, "children": []},
        {"id": "processes", "label": "Processes", "path": "/processes", "action": "process.list", "children": [
            {"id": "processes.active", "label": "Active", "path": "/processes?status=active", "action": "process.list", "children": []},
            {"id": "processes.drafts", "label": "Drafts", "path": "/processes?status=draft", "action": "process.list", "children": []},
            {"id": "processes.archive", "label": "Archive", "path": "/processes?status=archived", "action": "process.list", "children": []},
        ]},
        {"id": "rules", "label": "Rules", "path": "/rules", "action": "rule.list", "children": [
            {"id": "rules.search", "label": "Search rules", "path": "/rules/search", "action": "rule.search", "children": []},
        ]},
        {"id": "offices", "label": "Offices", "path": "/offices", "action": "office.list", "children": []},
        {"id": "workflows", "label": "Workflows", "path": "/workflows", "action": "workflow.list", "children": [
            {"id": "workflows.live", "label": "Live status", "path": "/workflows/live", "action": "workflow_status", "children": []},
        ]},
        {"id": "notifications", "label": "Notifications", "path": "/notifications", "action": "notification.list", "children": []},
        {"id": "settings", "label": "Settings", "path": "/settings", "action": "settings.get", "children": []},
        {"id": "system", "label": "System", "path": "/system", "action": "system_health", "children": []},
    ]);
    let tree = tree.as_array().map_or(&[][..], Vec::as_slice);
    match params.text("root") {
        None => Ok(json!({"nodes": tree})),
        Some(root) => find_node(tree, &root)
            .map(|n| json!({"nodes": [n]}))
            .ok_or_else(|| ApiError::not_found("node", &root)),
    }
}

/// The node `id` and its children, searched depth first.
fn find_node(nodes: &[Value], id: &str) -> Option<Value> {
    nodes.iter().find_map(|n| {
        if n["id"] == id {
            Some(n.clone())
        } else {
            n["children"].as_array().and_then(|c| find_node(c, id))
        }
    })
}
