<?php
// The PHP side of the agent's end-marker protocol (sandbox_agent/repl.py, DriverRepl).
// stdin lines: "run TOKEN PATH" evals the file PATH at the top level of this script, so variables,
// functions and classes persist across executions; "env HEXKEY HEXVALUE" sets the environment. After a
// run, stdout gets TOKEN + {"error"} (a Throwable the code did not catch) or {}, stderr gets TOKEN.
// Warnings and notices go to stderr. Fatal errors PHP cannot catch (redeclaring a function, memory
// exhaustion) end the process: the context restarts, state lost.
ini_set('display_errors', 'stderr');
ini_set('html_errors', '0');
error_reporting(E_ALL);

final class Interrupted extends \Error {}

$__vg_running = false;
if (function_exists('pcntl_async_signals')) {
    // SIGINT stops the running code (an Interrupted error); between executions it is ignored.
    pcntl_async_signals(true);
    pcntl_signal(SIGINT, function () {
        if ($GLOBALS['__vg_running']) {
            throw new Interrupted('interrupted');
        }
    });
}

$__vg_stdin = fopen('php://stdin', 'r');
while (($__vg_line = fgets($__vg_stdin)) !== false) {
    $__vg_parts = explode(' ', rtrim($__vg_line, "\n"), 3);
    if ($__vg_parts[0] === 'env') {
        $__vg_key = (string) hex2bin($__vg_parts[1]);
        $__vg_value = (string) hex2bin($__vg_parts[2] ?? '');
        putenv($__vg_key . '=' . $__vg_value);
        $_ENV[$__vg_key] = $__vg_value;
        $_SERVER[$__vg_key] = $__vg_value;
        continue;
    }
    $__vg_outcome = new stdClass();
    $__vg_running = true;
    try {
        eval(preg_replace('/^\s*<\?php\b/', '', (string) file_get_contents($__vg_parts[2])));
    } catch (\Throwable $__vg_e) {
        $__vg_outcome = ['error' => [
            'name' => get_class($__vg_e),
            'value' => $__vg_e->getMessage(),
            'traceback' => array_merge(
                ['cell line ' . $__vg_e->getLine()],
                array_values(array_filter(
                    explode("\n", $__vg_e->getTraceAsString()),
                    fn ($l) => !str_contains($l, __FILE__) && !str_ends_with($l, '{main}')
                ))
            ),
        ]];
    } finally {
        $__vg_running = false;
    }
    fwrite(STDOUT, $__vg_parts[1] . json_encode($__vg_outcome, JSON_INVALID_UTF8_SUBSTITUTE) . "\n");
    fwrite(STDERR, $__vg_parts[1] . "\n");
}
