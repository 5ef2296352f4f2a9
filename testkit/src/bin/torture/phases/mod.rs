//! One module per phase; each runs on its own terminal and fills its row.

pub mod churn;
pub mod clock;
pub mod diskfull;
pub mod hostile;
pub mod kill;
pub mod revoke;
