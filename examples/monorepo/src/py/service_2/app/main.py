from acme.util import greet

print(greet("service_2"))
