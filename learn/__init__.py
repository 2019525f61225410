"""Learning a phone ISP from aligned raw / DSLR pairs."""
