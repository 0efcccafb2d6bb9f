// The official MJML compiler on stdin: the HTML on stdout, or each validation error on stderr
// and exit status 1. Used by the tests to compare with mjml-python (newsletter/render.py).
const mjml2html = require("mjml");

let source = "";
process.stdin.setEncoding("utf8");
process.stdin.on("data", (chunk) => { source += chunk; });
process.stdin.on("end", async () => {
  try {
    const result = await mjml2html(source, { validationLevel: "strict", fonts: {}, keepComments: false });
    process.stdout.write(result.html);
  } catch (error) {
    for (const e of error.errors || [error]) process.stderr.write(`${e.formattedMessage || e.message}\n`);
    process.exit(1);
  }
});
