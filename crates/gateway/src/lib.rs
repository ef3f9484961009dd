//! ragfleet-gateway: an L7 load balancer made for chat traffic.
