// The AssemblyScript sample (with @assemblyscript/wasi-shim): greets, prints its arguments
// and GREETING, writes one console.error line (which the shim sends to stdout), exits 5.
console.log("Hello from AssemblyScript in a wasmvm VM!");
const argv = process.argv;
for (let i = 1; i < argv.length; i++) {
  console.log("arg " + i.toString() + ": " + argv[i]);
}
if (process.env.has("GREETING")) {
  console.log("GREETING=" + process.env.get("GREETING"));
}
console.error("AssemblyScript stderr line");
process.exit(5);
