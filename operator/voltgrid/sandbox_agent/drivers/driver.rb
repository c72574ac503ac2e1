# The Ruby side of the agent's end-marker protocol (sandbox_agent/repl.py, DriverRepl).
# stdin lines: "run TOKEN PATH" evaluates the file PATH in one binding kept across executions (local
# variables, methods, classes persist, as in irb); "env HEXKEY HEXVALUE" sets ENV. After a run, stdout
# gets TOKEN + {"result"} (the last value, inspect-ed; none for nil) or {"error"}, stderr gets TOKEN.
require 'json'

$stdout.sync = true
$stderr.sync = true
$vg_running = false
# SIGINT stops the running code (Interrupt, reported as an error); between executions it is ignored.
trap('INT') { raise Interrupt if $vg_running }

def vg_outcome(binding, path)
  $vg_running = true
  value = binding.eval(File.read(path, encoding: 'UTF-8'), 'cell', 1)
  value.nil? ? {} : { 'result' => value.inspect.scrub }
rescue Exception => e # rubocop:disable Lint/RescueException -- SyntaxError, Interrupt: all are the cell's
  raise if e.is_a?(SystemExit)

  trace = (e.backtrace || []).take_while { |l| !l.include?(__FILE__) }
  { 'error' => { 'name' => e.class.name, 'value' => e.message.to_s.scrub, 'traceback' => trace } }
ensure
  $vg_running = false
end

def vg_main
  cells = eval('binding', TOPLEVEL_BINDING) # a fresh top-level binding: the driver's locals stay out
  $stdin.each_line do |line|
    kind, first, rest = line.chomp.split(' ', 3)
    if kind == 'env'
      ENV[[first].pack('H*')] = [rest.to_s].pack('H*').force_encoding('UTF-8')
      next
    end
    outcome = vg_outcome(cells, rest)
    $stdout.write(first + JSON.generate(outcome) + "\n")
    $stderr.write(first + "\n")
  end
end

vg_main
