target "api_v2" {
  args = { FROM_HCL = "yes" }
}
