// The Java side of the agent's end-marker protocol (sandbox_agent/repl.py, DriverRepl), on the JDK's
// jshell API (module jdk.jshell): one JShell per context, so declarations persist across executions.
// stdin lines: "run TOKEN PATH" splits the file PATH into snippets as jshell does and evaluates them in
// order, stopping at the first rejected snippet or exception; after the run, stdout gets TOKEN +
// {"result"} (the last snippet's value when it is an expression) or {"error"} or {}, stderr gets TOKEN.
// SIGINT stops the running snippet. The JVM cannot change its own environment, so there is no "env".
import java.io.BufferedReader;
import java.io.InputStreamReader;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import jdk.jshell.EvalException;
import jdk.jshell.JShell;
import jdk.jshell.JShellException;
import jdk.jshell.Snippet;
import jdk.jshell.SnippetEvent;
import jdk.jshell.SourceCodeAnalysis;
import sun.misc.Signal;

public class Driver {
    static volatile boolean running = false;
    static volatile boolean stopped = false;

    public static void main(String[] args) throws Exception {
        // "local": snippets run in this JVM (one process per context, no debugger connection).
        JShell shell = JShell.builder().executionEngine("local").out(System.out).err(System.err).build();
        Signal.handle(new Signal("INT"), s -> {
            if (running) {
                stopped = true;
                shell.stop();
            }
        });
        BufferedReader in = new BufferedReader(new InputStreamReader(System.in, StandardCharsets.UTF_8));
        for (String line; (line = in.readLine()) != null; ) {
            String[] parts = line.split(" ", 3);
            if (parts.length < 3 || !parts[0].equals("run")) continue;
            String outcome;
            stopped = false;
            running = true;
            try {
                outcome = run(shell, Files.readString(Path.of(parts[2])));
            } finally {
                running = false;
            }
            System.out.flush();
            System.out.print(parts[1] + outcome + "\n");
            System.out.flush();
            System.err.print(parts[1] + "\n");
            System.err.flush();
        }
    }

    static String run(JShell shell, String code) {
        // Line by line, as the jshell tool reads its input: a snippet ends at the first line where it is
        // complete, so "x" then "inc(x)" on the next line are two expressions, not one declaration.
        SourceCodeAnalysis analysis = shell.sourceCodeAnalysis();
        String pending = "", result = null;
        for (String line : (code.endsWith("\n") ? code : code + "\n").split("(?<=\n)")) {
            pending += line;
            while (!pending.isBlank()) {
                SourceCodeAnalysis.CompletionInfo info = analysis.analyzeCompletion(pending);
                if (!info.completeness().isComplete()) break;
                pending = info.remaining();
                Outcome outcome = eval(shell, info.source());
                if (outcome.error != null) return outcome.error;
                result = outcome.value;
            }
        }
        if (!pending.isBlank()) {  // an unfinished snippet at the end: jshell rejects it with its reason
            Outcome outcome = eval(shell, pending);
            if (outcome.error != null) return outcome.error;
            result = outcome.value;
        }
        return result == null ? "{}" : "{\"result\":" + json(result) + "}";
    }

    record Outcome(String value, String error) {}

    static Outcome eval(JShell shell, String source) {
        String value = null;
        for (SnippetEvent event : shell.eval(source)) {
            if (event.causeSnippet() != null) continue;  // a dependent's update, not this snippet
            Snippet snippet = event.snippet();
            if (stopped) {
                return new Outcome(null, error("Interrupted", "the execution was interrupted", List.of()));
            }
            if (event.status() == Snippet.Status.REJECTED) {
                List<String> lines = new ArrayList<>();
                shell.diagnostics(snippet).forEach(d -> lines.add(d.getMessage(null)));
                String first = lines.isEmpty() ? "rejected: " + source.strip() : lines.get(0);
                return new Outcome(null, error("CompilationError", first, lines));
            }
            JShellException thrown = event.exception();
            if (thrown != null) {
                String name = thrown instanceof EvalException e ? e.getExceptionClassName() : thrown.getClass().getSimpleName();
                List<String> trace = new ArrayList<>();
                for (StackTraceElement frame : thrown.getStackTrace()) {  // the code's frames, not jshell's
                    String owner = frame.getClassName();
                    if (owner.startsWith("jdk.") || owner.startsWith("java.lang.reflect.")) break;
                    trace.add(frame.toString());
                }
                return new Outcome(null, error(name, String.valueOf(thrown.getMessage()), trace));
            }
            boolean expression = snippet.kind() == Snippet.Kind.EXPRESSION
                    || snippet.subKind() == Snippet.SubKind.TEMP_VAR_EXPRESSION_SUBKIND;
            value = expression ? event.value() : null;
        }
        return new Outcome(value, null);
    }

    static String error(String name, String value, List<String> trace) {
        List<String> lines = new ArrayList<>();
        trace.forEach(t -> lines.add(json(t)));
        return "{\"error\":{\"name\":" + json(name) + ",\"value\":" + json(value) + ",\"traceback\":["
                + String.join(",", lines) + "]}}";
    }

    static String json(String s) {
        StringBuilder b = new StringBuilder("\"");
        for (char c : s.toCharArray()) {
            switch (c) {
                case '"' -> b.append("\\\"");
                case '\\' -> b.append("\\\\");
                case '\n' -> b.append("\\n");
                case '\r' -> b.append("\\r");
                case '\t' -> b.append("\\t");
                default -> {
                    if (c < 0x20) b.append(String.format("\\u%04x", (int) c)); else b.append(c);
                }
            }
        }
        return b.append('"').toString();
    }
}
