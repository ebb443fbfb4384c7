# Expression corner cases: typed single interpolations, conversions, references to other
# targets and variables, templates with strip markers, maps from the environment.
variable "N" {
  default = 3
}
variable "FLAG" {
  default = "true"
}
variable "BASE_TAG" {
  default = "${REGISTRY}/base:${N}"
}
variable "REGISTRY" {
  default = "registry.example.com"
}
variable "MAP" {
  type    = map(string)
  default = { a = "1" }
}
variable "NUMS" {
  type    = list(number)
  default = [1, 2]
}

group "default" {
  targets = ["refs", "later"]
}

target "refs" {
  inherits = ["later"]
  tags     = ["${N}", "n-${N * 2}", BASE_TAG, target.later.tags[0]]
  args = {
    HALF      = 10 / 4
    FLOAT     = 1.5
    BOOL      = FLAG ? "yes" : "no"
    NEG       = -N
    CMP       = N >= 3 && !false
    SUM       = sum(NUMS)
    MAPPED    = join(",", [for k, v in MAP : "${k}=${v}"])
    UPPERKEYS = join(",", keys({ for k, v in MAP : upper(k) => v }))
    GROUPED   = length({ for v in ["a", "b", "a"] : v => v... }["a"])
    SPLAT     = join(",", [{ n = "x" }, { n = "y" }][*].n)
    INDEXED   = ["p", "q"][1]
    NESTED    = "${"in${"ner"}"}"
    ESCAPED   = "$${not} %%{not}"
    STRIPPED  = <<EOT
%{~ for n in NUMS ~}
[${n}]
%{~ endfor ~}
EOT
    LOOPED    = <<-EOT
      %{ for n in NUMS }
        [${n}]
      %{ endfor }
    EOT
    PLATFORM  = BAKE_LOCAL_PLATFORM
  }
  platforms = [BAKE_LOCAL_PLATFORM]
}

function "sum" {
  params = [xs]
  result = length(xs) == 0 ? 0 : xs[0] + (length(xs) > 1 ? sum2(slice(xs, 1, length(xs))) : 0)
}

function "sum2" {
  params = [xs]
  result = length(xs) == 0 ? 0 : xs[0] + (length(xs) > 1 ? xs[1] : 0)
}

target "later" {
  tags   = ["${REGISTRY}/later:${N}"]
  labels = { from = "later" }
  args   = { FROM_LATER = "yes" }
}
