// Validates KEDA objects against KEDA's own CRD schemas (@kubernetes-models/keda,
// generated from KEDA's API types; see package.json for the pinned version).
// Input on stdin: a JSON array of Kubernetes objects. Output on stdout: a JSON array
// of {kind, name, errors: [text]}, one per KEDA object. Other kinds are ignored.
import { ScaledObject } from "@kubernetes-models/keda/keda.sh/v1alpha1/ScaledObject";
import { ScaledJob } from "@kubernetes-models/keda/keda.sh/v1alpha1/ScaledJob";
import { TriggerAuthentication } from "@kubernetes-models/keda/keda.sh/v1alpha1/TriggerAuthentication";
import { ClusterTriggerAuthentication } from "@kubernetes-models/keda/keda.sh/v1alpha1/ClusterTriggerAuthentication";

const models = { ScaledObject, ScaledJob, TriggerAuthentication, ClusterTriggerAuthentication };

let input = "";
for await (const chunk of process.stdin) input += chunk;
const results = [];
for (const doc of JSON.parse(input)) {
  if (!String(doc.apiVersion || "").startsWith("keda.sh/")) continue;
  const Model = models[doc.kind];
  const name = (doc.metadata || {}).name;
  if (!Model || doc.apiVersion !== "keda.sh/v1alpha1") {
    results.push({ kind: doc.kind, name, errors: [`unknown KEDA kind or version ${doc.apiVersion} ${doc.kind}`] });
    continue;
  }
  const errors = [];
  try {
    new Model(doc).validate();
  } catch (err) {
    for (const e of err.errors || [{ instancePath: "", message: err.message }]) {
      errors.push(`${e.instancePath || "/"} ${e.message}${e.params && e.params.additionalProperty ? `: ${e.params.additionalProperty}` : ""}`);
    }
  }
  results.push({ kind: doc.kind, name, errors });
}
process.stdout.write(JSON.stringify(results));
