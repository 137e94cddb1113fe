//! Device JSON → normalized measurements, with the device-mapping templates of the Azure
//! MedTech service and the open-source IoMT FHIR Connector, unchanged.
//!
//! The crate is pure (no I/O, no clock): [`load_device_mapping`] compiles a template file
//! once, reporting every error with a JSON pointer and line:column; [`Normalizer`] then
//! turns each event into zero or more [`Measurement`]s, or one [`NormalizeError`] that
//! names the reference's exception type, the template, the expression and the value.
//!
//! ```
//! let mapping = r#"{"templateType": "CollectionContent", "template": [{
//!   "templateType": "JsonPathContent",
//!   "template": {"typeName": "heartrate", "typeMatchExpression": "$..[?(@heartRate)]",
//!                "deviceIdExpression": "$.deviceId", "timestampExpression": "$.endDate",
//!                "values": [{"valueName": "hr", "valueExpression": "$.heartRate", "required": true}]}
//! }]}"#;
//! let normalizer = normalizer::Normalizer::new(
//!     normalizer::load_device_mapping(mapping).into_result().expect("valid mapping"),
//! );
//! let body = br#"[{"heartRate": 78, "deviceId": "d1", "endDate": "2019-02-01T22:46:01+01:00"},
//!                 {"heartRate": 81, "deviceId": "d1", "endDate": "2019-02-01T22:47:01Z"}]"#;
//! let ms = normalizer.normalize(body, &Default::default(), &Default::default(), None).unwrap();
//! assert_eq!(ms.len(), 2);
//! assert_eq!(normalizer::format_utc(&ms[0].occurrence_time_utc), "2019-02-01T21:46:01Z");
//! ```
#![deny(missing_docs)]

pub mod doc;
pub mod jmespath_eval;
pub mod jmespath_fallback;
pub mod jsonpath;
pub mod location;
mod measurement;
mod normalize;
pub mod scope;
mod template;
pub mod value;

pub use measurement::{format_utc, Measurement, MeasurementProperty};
pub use normalize::{envelope, ErrorContext, ErrorType, NormalizeError, Normalizer, TemplateRef};
pub use template::{
    load_content_template, load_device_mapping, ContentTemplate, DeviceMapping, Expression,
    Language, Loaded, TemplateError, TemplateKind, ValueTemplate,
};
