DROP TABLE verification_sends;
DROP TABLE address_verifications;
