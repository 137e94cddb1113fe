//! The durable spool (see the module's full documentation once it lands).
