//! The business the simulated API serves: the kinds of process, the regions,
//! the offices and the people, and the id ranges, shared by every resource.
//! Fixed data, the same for every seed.

/// A process kind: name, owning department, and its steps as (step, role).
pub(crate) type ProcessKind = (
    &'static str,
    &'static str,
    &'static [(&'static str, &'static str)],
);

/// The kinds of process; each exists once per region.
#[rustfmt::skip]
pub(crate) const PROCESS_KINDS: [ProcessKind; 16] = [
    ("Invoice approval", "Finance", &[("Submit invoice", "Requester"), ("Match purchase order", "Accounts payable"), ("Manager approval", "Manager"), ("Finance approval", "Controller"), ("Schedule payment", "Treasury")]),
    ("Employee onboarding", "HR", &[("Create profile", "HR partner"), ("Prepare contract", "HR partner"), ("Order equipment", "IT support"), ("Grant access", "IT support"), ("First-day briefing", "Manager")]),
    ("Purchase order", "Procurement", &[("Draft request", "Requester"), ("Budget check", "Controller"), ("Manager approval", "Manager"), ("Send to vendor", "Buyer"), ("Confirm delivery", "Requester")]),
    ("Contract review", "Legal", &[("Upload draft", "Requester"), ("Legal review", "Counsel"), ("Negotiate changes", "Counsel"), ("Sign-off", "Director")]),
    ("Expense reimbursement", "Finance", &[("Submit receipts", "Employee"), ("Policy check", "Accounts payable"), ("Manager approval", "Manager"), ("Pay out", "Treasury")]),
    ("Vendor registration", "Procurement", &[("Collect documents", "Buyer"), ("Compliance check", "Compliance"), ("Verify bank details", "Treasury"), ("Activate vendor", "Buyer")]),
    ("Leave request", "HR", &[("Submit request", "Employee"), ("Check balance", "HR partner"), ("Manager approval", "Manager")]),
    ("Customer refund", "Customer Care", &[("Open case", "Agent"), ("Verify purchase", "Agent"), ("Approve refund", "Team lead"), ("Issue credit note", "Accounts receivable"), ("Notify customer", "Agent")]),
    ("Access request", "IT", &[("Request access", "Employee"), ("Owner approval", "System owner"), ("Security review", "Security"), ("Provision account", "IT support")]),
    ("Budget planning", "Finance", &[("Collect estimates", "Controller"), ("Department review", "Director"), ("CFO review", "CFO"), ("Publish budget", "Controller")]),
    ("Incident response", "IT", &[("Report incident", "Anyone"), ("Triage", "On-call engineer"), ("Mitigate", "On-call engineer"), ("Post-mortem", "Incident lead"), ("Close incident", "Incident lead")]),
    ("Asset disposal", "Operations", &[("Request disposal", "Employee"), ("Value assessment", "Controller"), ("Approve disposal", "Manager"), ("Wipe data", "IT support"), ("Collect asset", "Facilities")]),
    ("Travel booking", "Operations", &[("Submit trip", "Employee"), ("Policy check", "Travel desk"), ("Manager approval", "Manager"), ("Book travel", "Travel desk")]),
    ("Price change", "Sales", &[("Propose price", "Account manager"), ("Margin analysis", "Controller"), ("Sales director approval", "Sales director"), ("Publish price list", "Sales operations")]),
    ("Credit check", "Sales", &[("Request credit line", "Account manager"), ("Score customer", "Credit analyst"), ("Risk review", "Risk officer"), ("Set limit", "Credit analyst")]),
    ("Quality audit", "Operations", &[("Plan audit", "Quality lead"), ("On-site audit", "Auditor"), ("Report findings", "Auditor"), ("Corrective actions", "Site manager"), ("Close audit", "Quality lead")]),
];

/// Sales regions, for processes and offices.
pub(crate) const REGIONS: [&str; 3] = ["EMEA", "Americas", "APAC"];

/// Offices: id, name, city, country, time zone, region.
#[rustfmt::skip]
pub(crate) const OFFICES: [(&str, &str, &str, &str, &str, &str); 10] = [
    ("OFF-BER", "Berlin HQ", "Berlin", "DE", "Europe/Berlin", "EMEA"),
    ("OFF-LON", "London", "London", "GB", "Europe/London", "EMEA"),
    ("OFF-PAR", "Paris", "Paris", "FR", "Europe/Paris", "EMEA"),
    ("OFF-NBO", "Nairobi", "Nairobi", "KE", "Africa/Nairobi", "EMEA"),
    ("OFF-NYC", "New York", "New York", "US", "America/New_York", "Americas"),
    ("OFF-TOR", "Toronto", "Toronto", "CA", "America/Toronto", "Americas"),
    ("OFF-SAO", "Sao Paulo", "Sao Paulo", "BR", "America/Sao_Paulo", "Americas"),
    ("OFF-SIN", "Singapore", "Singapore", "SG", "Asia/Singapore", "APAC"),
    ("OFF-TYO", "Tokyo", "Tokyo", "JP", "Asia/Tokyo", "APAC"),
    ("OFF-SYD", "Sydney", "Sydney", "AU", "Australia/Sydney", "APAC"),
];

/// Owners, assignees and users.
pub(crate) const PEOPLE: [&str; 16] = [
    "Amara Okafor",
    "Lukas Schmidt",
    "Mei Tanaka",
    "Sofia Rossi",
    "Daniel Cohen",
    "Priya Nair",
    "Jonas Berg",
    "Chloe Martin",
    "Mateo Garcia",
    "Hannah Mueller",
    "Kwame Mensah",
    "Elena Petrova",
    "Liam O'Brien",
    "Aiko Sato",
    "Omar Haddad",
    "Grace Kim",
];

/// Number of processes: every kind in every region.
pub(crate) const PROCESS_COUNT: u64 = (PROCESS_KINDS.len() * REGIONS.len()) as u64;
/// Process ids are `PRC-1001` to `PRC-1048`, the same for every seed so that
/// a demo configuration can name them.
pub(crate) const PROCESS_ID_BASE: u64 = 1001;
/// Number of rules.
pub(crate) const RULE_COUNT: u64 = 36;
/// Rule ids are `RUL-2001` to `RUL-2036`, for every seed.
pub(crate) const RULE_ID_BASE: u64 = 2001;
/// Number of workflow instances.
pub(crate) const WORKFLOW_COUNT: u64 = 40;
/// Workflow ids are `WF-5001` to `WF-5040`, for every seed.
pub(crate) const WORKFLOW_ID_BASE: u64 = 5001;

/// `days` in milliseconds.
pub(crate) fn day_ms(days: u64) -> i64 {
    i64::try_from(days * 86_400_000).unwrap_or(i64::MAX)
}
