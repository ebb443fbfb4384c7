variable "N" {
  type    = number
  default = "not a number"
}
target "default" {}
